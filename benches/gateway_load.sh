#!/usr/bin/env bash
# Gateway load benchmark: req/s and p50 / p99 latency, in ONE run, for
#   1. the bare demo upstream (no gateway),
#   2. the gateway with no layers (--no-layers),
#   2b. the same with the listener's own limits off (strict HTTP/1.1 heads,
#       header / keep-alive / body-idle timeouts, body size): what the front
#       door's defaults cost,
#   3. the gateway with the full stack, in-process store,
#   4. the gateway with the full stack on Redis (a redis-server it starts),
# each on two paths: /health (text, layer overhead only) and /users/7 (JSON
# with PII: masked and compacted on every response). Needs wrk
# (apt-get install wrk) and redis-server.
#
#   bash benches/gateway_load.sh            # 10 s per case
#   DURATION=5s CONNECTIONS=64 bash benches/gateway_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server not found" >&2; exit 1; }

cargo build --release --example gateway -q
BIN=target/release/examples/gateway
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Limits high enough that every request is decided but none refused.
cat > "$WORK/bench.toml" <<'TOML'
[[rate_limit.limits]]
name = "ip"
key = "peer_ip"
limit = 1000000
TOML

# The listener's limits, every one that can be, off.
cat > "$WORK/open.toml" <<'TOML'
[server]
strict_http1 = false
header_read_timeout = "0s"
keep_alive_timeout = "0s"
body_idle_timeout = "0s"
max_body_bytes = 0
TOML

# start NAME ARGS... : runs the gateway binary, waits for its address line.
start() {
  local name=$1; shift
  RUST_LOG=error "$BIN" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    if grep -qE '^(listening on|demo upstream on) ' "$WORK/$name.out"; then return; fi
    sleep 0.1
  done
  echo "$name did not start:" >&2; cat "$WORK/$name.err" >&2; exit 1
}
addr_of() { grep -E "^$2 " "$WORK/$1.out" | head -1 | awk '{print $NF}'; }

UP_PORT=$(free_port)
start upstream --demo-only "127.0.0.1:$UP_PORT"
UPSTREAM=$(addr_of upstream "demo upstream on")

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no > "$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

gateway() { start "$1" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --upstream "$UPSTREAM" "${@:2}"; }
gateway bare --no-layers
gateway open --no-layers --config "$WORK/open.toml"
gateway full --config "$WORK/bench.toml"
gateway redis --config "$WORK/bench.toml" --redis "redis://127.0.0.1:$REDIS_PORT"

# run URL -> "req/s p50 p99"
run() {
  local out
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$1")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  if grep -q "Non-2xx" <<<"$out"; then echo "warning: non-2xx answers for $1" >&2; fi
  echo "$rps $p50 $p99"
}

echo "| path | setup | req/s | p50 | p99 | req/s vs gateway without layers |"
echo "|---|---|---:|---:|---:|---:|"
for path in /health /users/7; do
  declare -A R=()
  R[upstream]=$(run "$UPSTREAM$path")
  for g in bare open full redis; do R[$g]=$(run "$(addr_of $g 'listening on')$path"); done
  base=$(awk '{print $1}' <<<"${R[bare]}")
  for setup in upstream bare open full redis; do
    read -r rps p50 p99 <<<"${R[$setup]}"
    case $setup in
      upstream) label="upstream alone (no gateway)";;
      bare) label="gateway, no layers";;
      open) label="gateway, no layers, listener limits off";;
      full) label="gateway, full stack, in-process";;
      redis) label="gateway, full stack, Redis";;
    esac
    ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN {printf "%.2f", a/b}')
    echo "| $path | $label | $rps | $p50 | $p99 | $ratio |"
  done
  unset R
done
