#!/usr/bin/env bash
# What the admin dashboard's statistics cost an idle node: CPU time (utime + stime from
# /proc/<pid>/stat) of a `herald serve` with no client over 60 s, in four setups — Redis
# broker with and without [admin], memory broker with [admin] with and without an open
# dashboard (scripts/admin-watch.mjs). The figures are in docs/operations.md.
# usage: scripts/admin-idle-cpu.sh [path/to/herald]   (default: target/release/herald)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/herald}"
dir="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
hash="$(printf 'pw\n' | "$bin" admin hash-password)"
rport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no > "$dir/redis.log" 2>&1 &
sleep 0.5
redis="[broker]
kind = \"redis\"
url = \"redis://127.0.0.1:$rport\""
admin="[admin]
enabled = true
password_hash = \"$hash\""
config() { # name broker admin
  printf '[server]\nlisten = "127.0.0.1:0"\n[auth]\nhs256_secret = "s"\n%s\n%s\n[[channel]]\nname = "c"\nscope = "public"\nschema = { type = "object" }\n' "$2" "$3" > "$dir/$1.toml"
}
config redis-admin "$redis" "$admin"
config redis-plain "$redis" ""
config memory-admin "" "$admin"

measure() { # config [watch]
  local log="$dir/$1${2:+-$2}.log" pid wpid="" url t0 t1 hz=$(getconf CLK_TCK)
  "$bin" serve --config "$dir/$1.toml" > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
  url="$(sed -n 's/.*herald listening on \(http:[^ ]*\).*/\1/p' "$log")"
  if [ -n "${2:-}" ]; then node scripts/admin-watch.mjs "$url" admin pw > "$log.watch" 2>&1 & wpid=$!; fi
  sleep 5
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  sleep 60
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  [ -n "$wpid" ] && kill "$wpid" && wait "$wpid" 2>/dev/null || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$1${2:+ (dashboard open)}: $((t1 - t0)) ticks of 1/$hz s in 60 s = $(echo "scale=3; 100 * ($t1 - $t0) / $hz / 60" | bc)% of a core $(cat "$log.watch" 2>/dev/null || true)"
}
# In parallel: each figure is one process's own CPU time, unaffected by the others.
measure redis-admin > "$dir/r1" &
measure redis-plain > "$dir/r2" &
measure memory-admin > "$dir/r3" &
measure memory-admin watch > "$dir/r4" &
wait $(jobs -p | tail -4) 2>/dev/null || true
cat "$dir"/r1 "$dir"/r2 "$dir"/r3 "$dir"/r4
