#!/usr/bin/env bash
# Runs the whole benchmark suite and rewrites the generated section of docs/benchmarks.md
# (raw results in bench/results/latest.json). Servers run on SERVER_CPU, the load on LOAD_CPU.
#
#   bench/run-suite.sh                                  # everything (~15-20 min on 2 cores)
#   bench/run-suite.sh --peers herald,null --scenarios s3   # a subset
#   bench/run-suite.sh --conditions "quiet machine"     # a note written into the report
#   bench/run-suite.sh --peers herald,herald-sse --scenarios s1,s3   # WebSocket beside SSE
#   bench/run-suite.sh --peers herald,herald-base --baseline-bin OLD/herald --scenarios s1
#   bench/run-suite.sh --peers herald,herald-socketio,socketio,socketioxide,null --scenarios s1,s2,s3,s4
#
# The long runs are never in the default set (which stays under 25 min):
#   bench/run-suite.sh --peers herald --scenarios s8     # 100k connections, 6 nodes + Redis (~5 min)
#   bench/run-suite.sh --peers herald --scenarios soak   # 19k connections, 1%/s churn (~12 min)
#   bench/run-suite.sh --long                            # the default set, then S8 and the soak
#   bench/run-suite.sh --peers herald --scenarios s8 --s8-connections 12000 --s8-secs 20   # smaller
#   bench/run-suite.sh --peers herald --scenarios soak --soak-secs 60 --soak-connections 2000
# S8 and the soak need redis-server (Debian's redis-server package; --redis-server PATH).
#
# Any other argument goes to `herald-bench suite` (see `herald-bench suite --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

cargo build --release -p herald -p herald-bench
for peer in ws socketio; do
  (cd "bench/peers/$peer" && npm ci --no-audit --no-fund --loglevel=error)
done

# The socketioxide peer is its own Cargo project (not in the workspace) with its own target
# dir, built here only, and only when the run includes it; later runs reuse the build.
peers=default
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --peers) j=$((i + 1)); peers=${!j} ;;
    --peers=*) peers=${!i#--peers=} ;;
  esac
done
if [[ $peers == default || ,$peers, == *,socketioxide,* ]]; then
  CARGO_TARGET_DIR=bench/peers/socketioxide/target \
    cargo build --release --manifest-path bench/peers/socketioxide/Cargo.toml
fi

exec taskset -c "$LOAD_CPU" "$CARGO_TARGET_DIR/release/herald-bench" suite \
  --bin-dir "$CARGO_TARGET_DIR/release" --server-cpu "$SERVER_CPU" "$@"
