#!/usr/bin/env bash
# WebSocket conformance: the Autobahn test suite (`wstest -m fuzzingclient`, sections 1–7, and
# a representative permessage-deflate subset of 12 and 13: the full sections take ~10 min)
# against Herald's WebSocket transport, served by the test-only echo server
# `crates/herald-server/examples/ws_echo.rs` (same upgrade settings, reads and close logic as
# `/v1/ws`). Fails when any case run is not OK / NON-STRICT / INFORMATIONAL.
# Installs the suite (Python 2.7.18 from pyenv) when missing. Summary: docs/autobahn.md.
set -euo pipefail
cd "$(dirname "$0")/.."

WSTEST="$HOME/.local/bin/wstest"
if [ ! -x "$WSTEST" ]; then
  echo "==> installing autobahntestsuite 0.8.2 (Python 2.7.18)"
  PYENV_VERSION=2.7.18 python -m pip install --quiet --user autobahntestsuite==0.8.2
fi

cargo build --quiet -p herald-server --example ws_echo
out=target/autobahn
rm -rf "$out"
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/examples/ws_echo "127.0.0.1:$port" >"$out/echo.log" 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  grep -q listening "$out/echo.log" && break
  sleep 0.1
done

cat >"$out/spec.json" <<JSON
{
  "outdir": "./reports",
  "servers": [{ "agent": "herald", "url": "ws://127.0.0.1:$port/" }],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "12.1.1", "12.1.2", "12.1.3", "13.1.1", "13.1.2", "13.1.3", "13.2.1", "13.2.2", "13.2.3"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
echo "==> Autobahn fuzzingclient, sections 1-7, 12.1.1-3, 13.1.1-3, 13.2.1-3"
(cd "$out" && PYENV_VERSION=2.7.18 "$WSTEST" -m fuzzingclient -s spec.json >wstest.log 2>&1) || {
  tail -n 20 "$out/wstest.log"
  exit 1
}
python3 scripts/autobahn_check.py "$out/reports/index.json"
