#!/usr/bin/env bash
# S3 (broadcast) and S4 (per-user unicast) on a cluster of 2 Herald nodes, over each
# many-node broker: NATS (JetStream) and one Redis. The subscribers connect to node A, the
# publisher posts to node B, so every publication crosses the broker. Brokers and nodes are
# started here on free ports and stopped at the end. JSON reports go to bench/results/.
#
#   bench/brokers.sh                        # both brokers, modest size
#   BROKERS=nats S3_SUBSCRIBERS=5000 bench/brokers.sh
#
# Needs release builds of herald and herald-bench (cargo build --release -p herald -p
# herald-bench), nats-server and redis-server. Nodes run on SERVER_CPU, brokers and the load
# on the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BROKERS=${BROKERS:-nats redis}
S3_SUBSCRIBERS=${S3_SUBSCRIBERS:-2000}
S3_RATES=${S3_RATES:-10,20,40,80}
S4_USERS=${S4_USERS:-2000}
S4_RATES=${S4_RATES:-250,500,1000,2000}
STEP_SECS=${STEP_SECS:-3}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts a herald node on the broker; sets $node_addr and $node_pid (not in a subshell, so
# the pid lands in $pids for the clean-up).
start_node() {
  local name=$1 kind=$2 url=$3
  local dir=$work/$name
  mkdir -p "$dir"
  # [broker] before the file's tables, so it cannot land inside a [[channel]] array.
  { printf '[broker]\nkind = "%s"\nurl = "%s"\n\n' "$kind" "$url"
    cat bench/herald-bench.toml; } > "$dir/herald.toml"
  taskset -c "$SERVER_CPU" "$BIN/herald" serve --config "$dir/herald.toml" \
    > "$dir/stdout" 2> "$dir/stderr" &
  node_pid=$!
  pids+=("$node_pid")
  for _ in $(seq 100); do
    if grep -q 'listening on' "$dir/stdout" 2>/dev/null; then break; fi
    sleep 0.1
  done
  node_addr=$(sed -n 's#.*listening on http://##p' "$dir/stdout" | head -1)
  [ -n "$node_addr" ] || { echo "node $name did not start:" >&2; cat "$dir/stderr" >&2; exit 1; }
}

for broker in $BROKERS; do
  port=$(free_port)
  case $broker in
    nats)
      taskset -c "$LOAD_CPU" nats-server -js -a 127.0.0.1 -p "$port" -sd "$work/nats" \
        > "$work/nats.log" 2>&1 &
      pids+=($!)
      url="nats://127.0.0.1:$port"
      ;;
    redis)
      taskset -c "$LOAD_CPU" redis-server --port "$port" --bind 127.0.0.1 --save '' \
        --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
      pids+=($!)
      url="redis://127.0.0.1:$port"
      ;;
    *) echo "unknown broker $broker" >&2; exit 2 ;;
  esac
  sleep 0.5
  start_node "$broker-a" "$broker" "$url"; a=$node_addr; a_pid=$node_pid
  start_node "$broker-b" "$broker" "$url"; b=$node_addr; b_pid=$node_pid
  echo "==> $broker: node A $a (subscribers), node B $b (publisher)" >&2
  common=(--json --server "$a" --publish-server "$b" --server-pid "$a_pid" --server-pid "$b_pid"
          --step-secs "$STEP_SECS" --keep-going)
  taskset -c "$LOAD_CPU" "$BIN/herald-bench" run "${common[@]}" --mode broadcast \
    --connections "$S3_SUBSCRIBERS" --payload-bytes 100 --rates "$S3_RATES" \
    > "$OUT/brokers-$broker-s3.json"
  taskset -c "$LOAD_CPU" "$BIN/herald-bench" run "${common[@]}" --mode unicast \
    --connections "$S4_USERS" --rates "$S4_RATES" \
    > "$OUT/brokers-$broker-s4.json"
  kill "$a_pid" "$b_pid" 2>/dev/null || true
done
