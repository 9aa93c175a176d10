#!/usr/bin/env bash
# MQTT ingest benchmarks of the release binary, in one run on this machine:
#  1. the load generator against its built-in sink (the loader's own ceiling);
#  2. talo's embedded endpoint, QoS 1, as fast as acks allow (durable acks, fsync);
#  3. publish -> visible in SQL latency at a fixed 20k msg/s;
#  4. through Mosquitto: how fast `mosquitto_sub -q 1` alone drains N messages vs how
#     fast talo (subscribed, persistent session, acks after commit) stores them.
# Usage: benches/mqtt_compare.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=15; n=300000
[ "${1:-}" = "--quick" ] && { secs=5; n=100000; }

cargo build --release --bin talo --bench mqtt_load >/dev/null 2>&1 || cargo build --release --bin talo --bench mqtt_load
load=$(ls -t target/release/deps/mqtt_load-* | grep -v '\.d$' | head -1)
talo=target/release/talo
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cat > "$work/talo.toml" <<'EOF'
[[mqtt.routes]]
filter = "bench/+/+/+"
topic  = "bench/{building}/{room}/{sensor}"
format = "json"
db     = "bench"
table  = "env"
EOF
wait_http() { for _ in $(seq 1 600); do curl -sf "http://$1/ready" >/dev/null && return 0; sleep 0.1; done; return 1; }
count() { curl -s "http://$1/api/v1/query?db=bench&sql=SELECT%20count(*)%20AS%20n%20FROM%20env" | grep -o '"n":[0-9]*' | cut -d: -f2; }

echo "== 1. loader against a sink that acks at once"
"$load" --sink --connections 16 --sensors 4000 --duration "$secs"

echo "== 2. talo embedded endpoint, QoS 1, durable acks"
http=127.0.0.1:$(free_port); mq=127.0.0.1:$(free_port)
TALO_LOG=warn "$talo" serve --data-dir "$work/d1" --http-addr "$http" --mqtt-listen "$mq" --config "$work/talo.toml" >/dev/null &
pids+=($!); wait_http "$http"
"$load" --addr "$mq" --connections 16 --sensors 4000 --duration "$secs"

echo "== 3. publish -> visible in SQL at 20k msg/s"
"$load" --addr "$mq" --connections 8 --sensors 4000 --duration "$secs" --rate 20000 --http "$http"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

echo "== 4. through Mosquitto: mosquitto_sub ceiling vs talo, $n messages"
mport=$(free_port)
mkdir -p "$work/mq"
user_line=""; [ "$(id -u)" = 0 ] && user_line="user root"
printf "listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 1000\n%s\n" "$mport" "$user_line" > "$work/mq/m.conf"
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosq" -c "$work/mq/m.conf" >/dev/null 2>&1 & pids+=($!)
sleep 0.5
start=$(date +%s.%N)
mosquitto_sub -h 127.0.0.1 -p "$mport" -q 1 -t 'bench/#' -C "$n" >/dev/null & sub=$!
sleep 0.3
"$load" --addr "127.0.0.1:$mport" --connections 8 --sensors 4000 --count "$n" --qos 1 >/dev/null
wait "$sub"; end=$(date +%s.%N)
sub_rate=$(python3 -c "print(round($n/($end-$start-0.3)))")
echo "mosquitto_sub drained $n messages: $sub_rate msg/s"
http=127.0.0.1:$(free_port)
TALO_LOG=warn "$talo" serve --data-dir "$work/d2" --http-addr "$http" --mqtt-listen off \
  --mqtt-url "mqtt://127.0.0.1:$mport" --mqtt-client-id bench --config "$work/talo.toml" >/dev/null &
pids+=($!); wait_http "$http"; sleep 0.5
start=$(date +%s.%N)
"$load" --addr "127.0.0.1:$mport" --connections 8 --sensors 4000 --count "$n" --qos 1 >/dev/null
while [ "$(count "$http")" != "$n" ]; do sleep 0.01; done
end=$(date +%s.%N)
talo_rate=$(python3 -c "print(round($n/($end-$start)))")
echo "talo stored $n messages from Mosquitto: $talo_rate msg/s ($(python3 -c "print(round($talo_rate/$sub_rate*100))")% of mosquitto_sub)"
