#!/bin/bash
# One S1 idle run outside the suite, for attributing an idle connection's bytes
# (docs/benchmarks.md, issue 16 part two).
#
#   bench/idle-heap.sh BIN N [HEAPTRACK_OUT]
#
# Starts `BIN serve --config bench/herald-bench.toml` on CPU 0 (under heaptrack when a third
# argument is given: build BIN with `cargo build --release -p herald --no-default-features`,
# heaptrack cannot see jemalloc), connects N idle clients from CPU 1 with
# target/release/herald-bench, prints its JSON report (kb_per_connection is RSS growth / N),
# then stops the server. Attribute with
# `heaptrack_print -f OUT.zst -F stacks --flamegraph-cost-type peak`.
set -u
BIN=$1; N=$2; HT=${3:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp)
if [ -n "$HT" ]; then
  HERALD_LOG=warn taskset -c 0 heaptrack -o "$HT" "$BIN" serve --config "$ROOT/bench/herald-bench.toml" >"$OUT" 2>&1 &
else
  HERALD_LOG=warn taskset -c 0 "$BIN" serve --config "$ROOT/bench/herald-bench.toml" >"$OUT" 2>&1 &
fi
WRAP=$!
for _ in $(seq 200); do grep -q "http://" "$OUT" && break; sleep 0.3; done
ADDR=$(grep -o "http://[0-9.:]*" "$OUT" | head -1 | sed 's#http://##')
PID=$WRAP
# Under heaptrack (a shell script) the server is its child.
[ -n "$HT" ] && PID=$(pgrep -f "^$BIN serve --config" | head -1)
echo "server $ADDR pid $PID; $(uptime)" >&2
taskset -c 1 "$ROOT/target/release/herald-bench" run --server "$ADDR" --mode idle \
  --connections "$N" --settle-secs 3 --server-pid "$PID" --json --progress false
echo "$(uptime)" >&2
kill -INT "$PID"; sleep 3; kill "$PID" 2>/dev/null; wait "$WRAP" 2>/dev/null
rm -f "$OUT"
