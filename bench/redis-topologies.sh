#!/usr/bin/env bash
# S3 (broadcast) and S4 (per-user unicast) on two Herald nodes sharing one Redis, a
# Sentinel-managed master (with one replica), then a 3-master/3-replica Redis Cluster: the
# subscribers on node B, the publications posted to
# node A, so every delivery crosses the broker. Prints the markdown rows of
# docs/benchmarks.md ("Redis topologies").
#
#   bench/redis-topologies.sh [subscribers] [s3 rates] [s4 users] [s4 rates]
#
# Needs release builds: cargo build --release -p herald -p herald-bench
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-2000}
s3_rates=${2:-10,20,40,80}
users=${3:-2000}
s4_rates=${4:-250,500,1000,2000}
target=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
herald=$target/release/herald
bench=$target/release/herald-bench
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis() { # port [args…]
  local port=$1; shift
  mkdir -p "$work/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/$port" "$@" \
    >/dev/null 2>&1 &
  pids+=($!)
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
}

node() { # url → prints the node's address
  local out=$work/node-$RANDOM
  HERALD_LOG=warn HERALD_BROKER__KIND=redis HERALD_BROKER__URL=$1 \
    "$herald" serve --config bench/herald-bench.toml >"$out" 2>"$out.err" &
  pids+=($!)
  until grep -q 'http://' "$out" 2>/dev/null; do sleep 0.05; done
  sed -n 's/.*http:\/\///p' "$out" | head -1
}

measure() { # label url
  local a b
  a=$(node "$2")
  b=$(node "$2")
  sleep 1
  for mode in broadcast unicast; do
    if [ $mode = broadcast ]; then n=$subs; r=$s3_rates; else n=$users; r=$s4_rates; fi
    "$bench" run --json --server "$b" --publish-server "$a" --mode $mode --connections "$n" \
      --rates "$r" --keep-going --progress false 2>/dev/null | tail -1 |
      jq -r --arg name "$1" --arg mode $mode \
        '.steps[] | "| \($name) | \(if $mode == "broadcast" then "S3" else "S4" end) | \(.rate) | \(.received) | \(.lost) | \(.deliveries_per_sec | floor) | \(.latency.p50_ms) | \(.latency.p99_ms) | \(.ok) |"'
  done
}

echo "| broker | scenario | rate (pub/s) | received | lost | deliveries/s | p50 ms | p99 ms | p99 within limit |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"

single=$(free_port)
redis "$single"
measure "one Redis" "redis://127.0.0.1:$single"

master=$(free_port)
redis "$master"
replica=$(free_port)
redis "$replica" --replicaof 127.0.0.1 "$master"
sentinel=$(free_port)
printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor bench 127.0.0.1 %s 1\n' \
  "$sentinel" "$work" "$master" >"$work/sentinel.conf"
redis-server "$work/sentinel.conf" --sentinel >/dev/null 2>&1 &
pids+=($!)
until redis-cli -p "$sentinel" sentinel get-master-addr-by-name bench 2>/dev/null | grep -q "$master"; do
  sleep 0.1
done
measure "Sentinel (master + replica)" "redis+sentinel://127.0.0.1:$sentinel/bench"

ports=()
for _ in 1 2 3 4 5 6; do
  p=$(free_port); bus=$(free_port)
  redis "$p" --cluster-enabled yes --cluster-port "$bus" --cluster-config-file "$work/nodes-$p.conf"
  ports+=("127.0.0.1:$p")
done
redis-cli --cluster create "${ports[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
until redis-cli -p "${ports[0]#*:}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
sleep 1
measure "Redis Cluster (3+3)" "redis+cluster://$(IFS=,; echo "${ports[*]}")"
