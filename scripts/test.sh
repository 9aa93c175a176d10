#!/usr/bin/env bash
# The whole test suite, from a fresh clone on Debian/Ubuntu:
# installs what the tests need (curl, openssl, Mosquitto and its clients, Python with pyarrow,
# duckdb, openapi-spec-validator, paho-mqtt and schemathesis in .venv; debootstrap and
# docker-compose when a Docker engine answers), then checks formatting and lints and runs every
# test.
# The container tests (tests/docker.rs) run whenever a Docker engine answers; without one they
# are SKIPPED, unless TALO_REQUIRE_DOCKER=1 (.ci/run), which makes a missing engine a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
command -v openssl >/dev/null || need_apt+=(openssl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
docker_tests=0
if docker info >/dev/null 2>&1; then
  docker_tests=1
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
  command -v objcopy >/dev/null || need_apt+=(binutils)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need_apt+=(docker-compose)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi

# pyarrow 18.1 or later: older ones refuse the decimal64 columns talo writes for short-decimal floats
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import pyarrow, duckdb, openapi_spec_validator, paho.mqtt.client, schemathesis; assert tuple(int(x) for x in pyarrow.__version__.split(".")[:2]) >= (18, 1)' 2>/dev/null; then
  echo "== creating .venv with the Python test readers"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/py/requirements.txt
fi
export TALO_TEST_PYTHON="$PWD/.venv/bin/python"
export PATH="$PATH:/usr/sbin"

if [ "$docker_tests" = 1 ]; then
  echo "== Docker engine answers: the container tests run (tests/docker.rs)"
elif [ "${TALO_REQUIRE_DOCKER:-0}" = 1 ]; then
  echo "== TALO_REQUIRE_DOCKER=1 but no Docker engine answers \`docker info\`" >&2
  exit 1
else
  echo "== SKIPPED: container tests (tests/docker.rs): no Docker engine answers \`docker info\`"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
[ "$docker_tests" = 1 ] || echo "SKIPPED: container tests (no Docker engine)"
exit "$status"
