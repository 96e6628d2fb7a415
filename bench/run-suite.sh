#!/usr/bin/env bash
# Runs the whole benchmark suite and rewrites the generated section of docs/benchmarks.md
# (raw results in bench/results/latest.json). Servers run on SERVER_CPU, the load on LOAD_CPU.
#
#   bench/run-suite.sh                                  # the default set (~22 min on 2 cores;
#                                                       # the suite prints its estimate first)
#   bench/run-suite.sh --peers herald,null --scenarios s3   # a subset
#   bench/run-suite.sh --conditions "quiet machine"     # a note written into the report
#   bench/run-suite.sh --peers herald,herald-sse --scenarios s1,s3   # WebSocket beside SSE
#   bench/run-suite.sh --peers herald,herald-base --baseline-bin OLD/herald --scenarios s1
#   bench/run-suite.sh --peers herald,herald-socketio,socketio,socketioxide,null --scenarios s1,s2,s3,s4
#   bench/run-suite.sh --peers herald,herald-deflate,ws,ws-deflate --scenarios s1,s3z   # compression
#   bench/run-suite.sh --peers herald,sockudo --sockudo-bin /path/to/sockudo --scenarios s3
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

# Which peers run, and whether a peer's binary was given (then it is not built here).
peers=default
sockudo_bin=
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --peers) j=$((i + 1)); peers=${!j} ;;
    --peers=*) peers=${!i#--peers=} ;;
    --sockudo-bin) j=$((i + 1)); sockudo_bin=${!j} ;;
    --sockudo-bin=*) sockudo_bin=${!i#--sockudo-bin=} ;;
  esac
done
wants() { [[ $peers == default || ,$peers, == *,$1,* ]]; }

# The socketioxide peer is its own Cargo project (not in the workspace) with its own target
# dir, built here only, and only when the run includes it; later runs reuse the build.
if wants socketioxide; then
  CARGO_TARGET_DIR=bench/peers/socketioxide/target \
    cargo build --release --manifest-path bench/peers/socketioxide/Cargo.toml
fi

# Sockudo (crates.io) is installed once into bench/peers/sockudo/root (gitignored) when the run
# includes it and no --sockudo-bin was given; its build needs protoc and the protobuf headers
# (Debian: protobuf-compiler, libprotobuf-dev). Never in CI: the test that needs it skips.
if wants sockudo && [[ -z $sockudo_bin && ! -x bench/peers/sockudo/root/bin/sockudo ]]; then
  if [[ -n ${CI:-} ]]; then
    echo "run-suite.sh: not installing sockudo in CI; pass --sockudo-bin or drop the peer" >&2
    exit 1
  fi
  if ! command -v protoc >/dev/null || [[ ! -d /usr/include/google/protobuf ]]; then
    sudo=; [[ $(id -u) -ne 0 ]] && sudo=sudo
    $sudo apt-get install -y protobuf-compiler libprotobuf-dev
  fi
  # Its own target dir, so the workspace's is not invalidated; ~20 min on 2 cores, once.
  CARGO_TARGET_DIR=bench/peers/sockudo/target \
    cargo install sockudo --locked --root bench/peers/sockudo/root
fi

exec taskset -c "$LOAD_CPU" "$CARGO_TARGET_DIR/release/herald-bench" suite \
  --bin-dir "$CARGO_TARGET_DIR/release" --server-cpu "$SERVER_CPU" "$@"
